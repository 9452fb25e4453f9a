"""genrec"""
