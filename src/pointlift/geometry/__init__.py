"""pointlift.geometry"""
