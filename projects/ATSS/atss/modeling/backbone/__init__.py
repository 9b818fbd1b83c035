"""atss.modeling.backbone"""
