"""atss.modeling"""
