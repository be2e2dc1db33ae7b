"""The last guard on answer size: whatever a tool returns, the model gets a bounded answer."""

from tariti_mcp.answers import bounded, size


def test_small_answer_passes_unchanged():
    answer = {"items": [1, 2, 3], "has_more": False}
    assert bounded(answer, limit=1000) is answer


def test_longest_list_is_cut_and_the_answer_says_so():
    answer = {"items": [{"id": i, "name": "x" * 50} for i in range(200)], "other": [1, 2]}
    cut = bounded(answer, limit=3000)
    assert size(cut) <= 3000
    assert cut["truncated"] is True
    kept = len(cut["items"])
    assert 0 < kept < 200
    assert cut["items"] == answer["items"][:kept]
    assert cut["other"] == [1, 2]
    assert f"{kept} of 200 items" in cut["note"]
    assert len(answer["items"]) == 200  # the caller's answer is left alone


def test_one_huge_value_becomes_a_preview():
    answer = {"message": "y" * 10_000}
    cut = bounded(answer, limit=2000)
    assert size(cut) <= 2000
    assert cut["truncated"] is True and "narrow the request" in cut["note"]
    assert cut["preview"].startswith('{"message": "yyy')
