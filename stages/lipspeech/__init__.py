"""lipspeech"""
