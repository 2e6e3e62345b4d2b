"""pointlift.models"""
