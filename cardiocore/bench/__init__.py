"""Benchmarks behind `cardio bench ...`: figures printed beside their targets."""
