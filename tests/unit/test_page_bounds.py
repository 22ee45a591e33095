"""A resumed page's members split into the batches recorded before the crash (services.extractor.page_bounds)."""

from services.extractor.page_bounds import batch_ends, regroup
from shared.member_batches import EncodedBatch
from shared.querystore import JsonPage, Page

#: Three batches of three: a-c, d-f, g-i.
ENDS: list[list[str | int]] = [["a", "c", 3], ["d", "f", 3], ["g", "i", 3]]


def _split(keys: str, size: int = 3) -> tuple[list[str], str]:
    groups, new = regroup(list(keys), ENDS, size)
    return ["".join(keys[p] for p in g) for g in groups], "".join(keys[p] for p in new)


def test_the_same_members_come_back_in_the_same_batches():
    assert _split("abcdefghi") == (["abc", "def", "ghi"], "")


def test_deleted_members_make_their_batch_smaller_and_move_no_other():
    assert _split("abdefghi") == (["ab", "def", "ghi"], "")  # an inner one
    assert _split("abdfghi") == (["ab", "df", "ghi"], "")  # a batch's last and an inner one of the next
    assert _split("ghi") == (["", "", "ghi"], "")  # whole batches
    assert _split("bcdefghi") == (["bc", "def", "ghi"], "")  # the page's first
    assert _split("") == (["", "", ""], "")


def test_the_limit_a_batch_s_last_and_the_next_one_s_first_both_deleted_send_the_next_one_s_inner_members_anew():
    # Nothing recorded tells where a-c ends (keys are compared by equality only, never ordered here): e is one member
    # too many for a-c, so it goes under a new index, not into another batch's identity (README, Resumable extraction).
    assert _split("abefghi") == (["ab", "f", "ghi"], "e")


def test_members_inserted_between_batches_are_in_none():
    assert _split("abcxdefghiy") == (["abc", "def", "ghi"], "xy")
    assert _split("xabcdefghi") == (["abc", "def", "ghi"], "x")


def test_a_batch_with_members_inserted_inside_keeps_its_ends_and_as_many_members_as_a_record_holds():
    assert _split("abxcdefghi") == (["abc", "def", "ghi"], "x")  # b was there: so was x's place, a record holds 3
    assert _split("axcdefghi") == (["axc", "def", "ghi"], "")  # b deleted, x inserted: three, as many
    groups, new = regroup(list("axbc"), [["a", "b", 2], ["c", "c", 1]], 3)  # its count, not the record's size
    assert (groups, new) == ([[0, 2], [3]], [1])


def test_a_member_inserted_where_a_batch_s_deleted_first_was_is_in_none_when_the_batch_had_no_inner_member():
    groups, new = regroup(list("abxd"), [["a", "b", 2], ["c", "d", 2]], 2)
    assert (groups, new) == ([[0, 1], [3]], [2])


def test_a_page_s_batch_ends_are_read_from_rows_and_from_the_members_json_alike():
    batches = [EncodedBatch(0, 2, b""), EncodedBatch(1, 1, b"")]
    rows = Page(("id", "name"), [(1, "a"), (2, "b"), (3, "c")], 3)
    json = JsonPage([b'{"id":1,"name":"a"}', b'{"id":2,"name":"b"}', b'{"id":3,"name":"c"}'], None, 3)
    assert batch_ends(rows, batches, "id") == batch_ends(json, batches, "id") == [["1", "2", 2], ["3", "3", 1]]
    assert batch_ends(rows, batches, "uid") is None
