"""placeholder"""
def tokenize_batch(captions):
    raise NotImplementedError
