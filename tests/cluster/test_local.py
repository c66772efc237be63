from cluster import local


def test_head_answers_jobs_api(ray_head):
    version = local.dashboard_version(ray_head.dashboard_url)
    assert version is not None and version["ray_version"]
    # starting again reuses the running head instead of failing on its ports
    assert local.start(ray_head) == ray_head


def test_nothing_answers_on_a_closed_port():
    from tests.conftest import free_port

    assert local.dashboard_version(f"http://127.0.0.1:{free_port()}", timeout=0.5) is None
