"""Local emulators of amoCRM and Moizvonki with deterministic seeded data, to try and to test."""

from .data import generate
from .runner import Sandbox

__all__ = ["Sandbox", "generate"]
