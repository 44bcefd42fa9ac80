"""Names shared by the generator, the models and the stages: views and diagnosis classes."""

# The standard screening views (probe positions): parasternal long and short axis, apical four and five chamber.
VIEWS: tuple[str, ...] = ("plax", "psax", "a4c", "a5c")

# What the view model answers, in its output order: a standard view, or "other" for off-axis and
# poor-quality frames that no view's criteria should be read from.
VIEW_CLASSES: tuple[str, ...] = (*VIEWS, "other")

# Study classes by the World Heart Federation 2012 criteria, in the classifier's order.
CLASSES: tuple[str, ...] = ("normal", "borderline", "definite")
