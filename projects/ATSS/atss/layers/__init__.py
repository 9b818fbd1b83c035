"""atss.layers"""
