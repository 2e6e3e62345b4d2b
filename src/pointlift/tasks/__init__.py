"""pointlift.tasks"""
