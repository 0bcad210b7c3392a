"""Injective (dimension-changing) layers."""
