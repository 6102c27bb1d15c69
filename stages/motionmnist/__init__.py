"""motionmnist"""
