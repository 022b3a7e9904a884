"""Thin Kopf entry points: parse the body into the model, call one service, map errors."""
