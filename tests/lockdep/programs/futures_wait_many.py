"""expect: clean
concurrent.futures.wait() and as_completed() on 60 futures take every future's condition at
once, sorted by id: same-class locks nested in one fixed order, 60 held at a time."""
import concurrent.futures
import time

with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futures = [pool.submit(time.sleep, 0.001) for _ in range(60)]
    done, _ = concurrent.futures.wait(futures)
    assert len(done) == 60
    futures = [pool.submit(pow, 2, i) for i in range(60)]
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures))[0] == 1
