"""gameplay"""
