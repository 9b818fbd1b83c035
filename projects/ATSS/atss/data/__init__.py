"""atss.data"""
