"""cogvlm_lite"""
