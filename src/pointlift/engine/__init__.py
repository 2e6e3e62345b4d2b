"""pointlift.engine"""
