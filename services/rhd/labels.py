"""Names shared by the generator, the models and the stages: views and diagnosis classes."""

# Probe positions the view model knows; the order is the model's output order.
VIEWS: tuple[str, ...] = ("plax", "psax", "a4c", "a2c")

# Study classes by the World Heart Federation 2012 criteria, in the classifier's order.
CLASSES: tuple[str, ...] = ("normal", "borderline", "definite")
