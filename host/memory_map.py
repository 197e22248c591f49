"""Host-side checks of memory accesses against the chip's memory map
(:data:`neurofabric.hdl.memory_map.MEMORY_MAP`), vectorised over numpy arrays of words.

:func:`check_write` is the one validator of writes: the model (``ChipModel.write_words``), the
host link (``LinkBackend.write``) and the tests call it, and the link gateware's
``WordChecker`` is generated from the same declaration, so every backend refuses the same
words with the same :class:`~neurofabric.hdl.memory_map.MemoryMapError` (docs/protocol.md,
"Memory map").
"""

import numpy as np

from neurofabric.hdl.memory_map import MEMORY_MAP, WORD_BITS, MemoryMapError, space_of, to_int32, to_word

__all__ = ["check_access", "check_word", "check_write", "to_words", "random_words", "MemoryMapError"]


def _check_int(name, value, lo, hi, error):
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise error(f"{name} must be an integer in [{lo}, {hi}], not {value!r}", field=name, value=value,
                    allowed=(lo, hi))
    if not lo <= int(value) <= hi:
        raise error(f"{name} = {int(value)} is out of range: allowed [{lo}, {hi}]", field=name, value=int(value),
                    allowed=(lo, hi))
    return int(value)


def check_access(space, chip, core, addr, count, *, error=MemoryMapError):
    """Validate an access of `count` words of `space` of `core` from `addr` on; return the space."""
    space = space_of(space)
    words = MEMORY_MAP[space].size(chip)
    _check_int("core", core, 0, chip.cores - 1, error)
    _check_int("count", count, 0, words, error)
    _check_int("addr", addr, 0, words - count, error)
    return space


def to_words(words, *, error=MemoryMapError):
    """`words` (ints in [-2**31, 2**32 - 1], a sequence or an integer array) as an int64 array
    of unsigned 32-bit words, or `error`."""
    array = np.asarray(words)
    if array.ndim != 1:
        raise error(f"words must be a 1-D sequence of integers, got shape {array.shape}", field="words",
                    value=words, allowed=(-(1 << 31), (1 << 32) - 1))
    if array.dtype.kind not in "iu" or array.dtype == np.uint64:
        if array.size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.array([to_word(w) for w in array.tolist()], dtype=np.int64)
    array = array.astype(np.int64)
    bad = np.flatnonzero((array < -(1 << 31)) | (array >= 1 << 32))
    if len(bad):
        to_word(int(array[bad[0]]))
    return array & ((1 << WORD_BITS) - 1)


def _first_refusal(space, chip, addr, words):
    """(offset, message, field, value, allowed) of the first word of a write refused by its own
    layout (read-only, missing feature, a field out of range), or None."""
    found = None
    for block, offsets, _ in MEMORY_MAP[space].split(chip, addr, np.arange(len(words))):
        if not len(offsets) or (found is not None and offsets[0] > found[0]):
            continue
        word_decl = block.word
        at = int(offsets[0])
        if word_decl.read_only:
            refusal = (at, f"{space.name} address {addr + at} ({word_decl.name}) is read-only",
                       word_decl.name, int(words[at]), None)
        elif word_decl.requires is not None and not word_decl.requires(chip):
            refusal = (at, f"{word_decl.name}: {word_decl.requires_text}", word_decl.name, int(words[at]), None)
        else:
            bad = word_decl.first_error(chip, words[offsets])
            if bad is None:
                continue
            index, label, value, (lo, hi) = bad
            refusal = (int(offsets[index]), f"{label} = {value} is out of range: allowed [{lo}, {hi}]",
                       label, value, (lo, hi))
        if found is None or refusal[0] < found[0]:
            found = refusal
    return found


def check_word(space, chip, addr, word, *, error=MemoryMapError):
    """Validate one word written to `addr` of `space` (its address, writability, feature and
    fields); return its field values. Rules between words are :func:`check_write`'s."""
    check_write(space, chip, 0, addr, [word], error=error)
    return MEMORY_MAP[space_of(space)].locate(chip, addr).word.unpack(to_word(word))


def check_write(space, chip, core, addr, words, *, stored=None, error=MemoryMapError):
    """Validate a write of `words` to `space` of `core` from `addr` on, as the chip does: the
    access, every word's layout, then the space's :class:`Order` rules on the values after the
    write (`stored(addr)` gives a stored word the write leaves alone; without it a rule is
    checked only when the write holds both words). Returns the words as an int64 array of
    unsigned 32-bit words."""
    words = to_words(words, error=error)
    space = check_access(space, chip, core, addr, len(words), error=error)
    refusal = _first_refusal(space, chip, addr, words)
    if refusal is not None:
        offset, message, field, value, allowed = refusal
        raise error(message, field=field, value=value, allowed=allowed, space=space, addr=addr + offset)
    decl = MEMORY_MAP[space]
    for rule in decl.rules:
        low_addr, high_addr = decl.address(chip, rule.low), decl.address(chip, rule.high)
        inside = [addr <= at < addr + len(words) for at in (low_addr, high_addr)]
        if not any(inside) or (not all(inside) and stored is None):
            continue
        low, high = (to_int32(int(words[at - addr]) if written else to_word(stored(at)))
                     for at, written in zip((low_addr, high_addr), inside))
        if low > high:          # blame the word written (w_min if both are)
            blamed, other = (low_addr, high) if inside[0] else (high_addr, low)
            word_decl = decl.locate(chip, blamed).word
            low_name, high_name = (decl.locate(chip, at).word.name for at in (low_addr, high_addr))
            lo, hi = word_decl.fields[word_decl.name].bounds(chip)
            allowed = (lo, other) if inside[0] else (other, hi)
            value = low if inside[0] else high
            raise error(f"{word_decl.name} = {value} is out of range: allowed [{allowed[0]}, {allowed[1]}] "
                        f"({low_name} <= {high_name})", field=word_decl.name, value=value,
                        allowed=allowed, space=space, addr=blamed)
    return words


def random_words(rng, space, chip, addr, count, *, stored=None, attempts=100):
    """`count` random words the memory map accepts at ``addr ..`` of `space` (for tests and
    benches): every field uniform in its range, drawn again while a rule between words
    (``w_min <= w_max``, against `stored` outside the write) refuses them. `rng` is a
    ``random.Random`` or a numpy ``Generator``."""
    space = space_of(space)
    draw = rng.randrange if hasattr(rng, "randrange") else (lambda lo, hi: int(rng.integers(lo, hi)))
    decl = MEMORY_MAP[space]
    for _ in range(attempts):
        words = []
        for offset in range(count):
            word_decl = decl.locate(chip, addr + offset).word
            values = {}
            fields = [(name, field) for name, _, _, _, field in word_decl.items if name != "reserved"]
            for name, field in sorted(fields, key=lambda item: item[1].when is not None):
                lo, hi = field.bounds(chip)
                if field.when is not None and values[field.when[0]] == field.when[1]:
                    lo, hi = field.when[2]
                values[name] = draw(lo, hi + 1)
            words.append(word_decl.pack(**values))
        try:
            return check_write(space, chip, 0, addr, words, stored=stored)
        except MemoryMapError:
            continue
    raise MemoryMapError(f"no valid words for {space.name}[{addr}..{addr + count - 1}] in {attempts} draws",
                         field="words", value=count, allowed=None, space=space, addr=addr)
