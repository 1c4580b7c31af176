"""Recipes: BoxGrinder ``.appl`` and Oz TDL, loaded into one frozen model (:mod:`.model`)."""
