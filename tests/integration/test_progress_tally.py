"""The driver's progress Tally on a real local Ray: tracked stages started back to back."""

import pytest

pytestmark = pytest.mark.ray


def test_tracked_stages_back_to_back_find_a_live_tally():
    """A stage that ends drops its handle; were it the last, the Tally would die while the next
    stage, started at once, still finds it by name (ActorDiedError: seen in ``bench --vllm``)."""
    import ray

    from dsw_ray import progress
    from dsw_ray.ray_session import start_local_ray

    start_local_ray(1)
    try:
        for _ in range(20):
            with progress.tracking("generate", "generate", 1) as measured:
                pass
            assert measured.busy_seconds is None  # no pool reported a call
    finally:
        ray.shutdown()
