import captionaura


def test_core_imports_and_threads():
    n = captionaura.get_num_threads()
    assert n >= 1
    captionaura.set_num_threads(1)
    assert captionaura.get_num_threads() == 1
    captionaura.set_num_threads(n)
