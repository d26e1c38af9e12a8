"""Code that runs inside a stage's Job. Never imports the operator."""
