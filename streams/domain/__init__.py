"""Domain rules: NIR, geography, validation, the synthetic event generator. Imports: errors."""
