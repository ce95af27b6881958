

@pytest.mark.parametrize("value", ["string", "hash"])
def test_a_reply_key_of_the_wrong_type_dead_letters_its_task_alone(
    redis_client: redis.Redis, shim: Callable[..., None], value: str
) -> None:
    r = redis_client
    for task_id in [*GOOD, "bad"]:
        write_task(r, task_id, "w1")
    if value == "string":
        r.set(L.reply("bad"), "squatter")
    else:
        r.hset(L.reply("bad"), "squatter", "1")
    r.lpush(L.queue("w1"), *GOOD[:5], "bad", *GOOD[5:])  # one batch
    shim("w1")
    assert_ran_once_each(r, GOOD)
    assert wait_for(lambda: r.lrange(L.dead_letter("w1"), 0, -1), 30, "dlq") == ["bad"]
    wait_for(lambda: r.llen(L.inflight("w1", "h1")) == 0, 30, "nothing left in flight")
    assert r.type(L.reply("bad")) == value, "the squatter's value is not touched"
    write_task(r, "after", "w1")  # the queue keeps working
    r.lpush(L.queue("w1"), "after")
    assert_ran_once_each(r, ["after"])
