"""The FathomRecipe API: pydantic models that are the one source of the CRD schema."""
