"""The scene classes and recording devices of the TAU22 layout (DCASE 2022-2025 Task 1).

Class indices everywhere (labels, logits, confusion matrices) follow SCENES' order.
"""
SCENES = (
    "airport", "bus", "metro", "metro_station", "park",
    "public_square", "shopping_mall", "street_pedestrian", "street_traffic", "tram",
)
DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
UNSEEN_DEVICES = ("s4", "s5", "s6")
