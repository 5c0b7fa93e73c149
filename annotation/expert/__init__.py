"""Expert studies (GG'18): a researcher plans a study of a layer, experts label units in a fixed order of tasks,
and agreement and comparisons with dissection are reported. Imports the floor (``annotation.*``), never
``annotation.crowd``."""
