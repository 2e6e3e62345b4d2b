"""pointlift.teachers"""
