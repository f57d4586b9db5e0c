"""faiss behind a small NumPy interface: k-means, exact and approximate indexes, chunked search
(faiss_index, the only module that imports faiss) and the index kinds and their parameters
(index_kinds).
"""
