"""Domain rules of the screening system: identifiers (NIR) and geography (regions, communes)."""
