"""Local emulators of amoCRM and Moizvonki with deterministic seeded data, for trying and testing."""

from .data import generate
from .runner import Sandbox

__all__ = ["Sandbox", "generate"]
