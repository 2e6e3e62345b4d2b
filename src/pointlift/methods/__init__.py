"""pointlift.methods"""
