"""model_repository"""
