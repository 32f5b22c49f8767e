async def test_health(client):
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_served_links_name_the_port_served_on_unless_a_public_url_is_set():
    from cdp.cli import served_settings
    from cdp.settings import Settings

    settings = Settings.from_env({})
    assert served_settings(settings, {}, "0.0.0.0", 8731).public_url == "http://127.0.0.1:8731"
    assert served_settings(settings, {}, "::1", 9000).public_url == "http://[::1]:9000"
    public = Settings.from_env({"CDP_PUBLIC_URL": "https://cdp.example/"})
    env = {"CDP_PUBLIC_URL": "https://cdp.example/"}
    assert served_settings(public, env, "0.0.0.0", 8731).public_url == "https://cdp.example"


def test_cdp_env_is_read_in_any_case_and_an_unknown_one_is_refused():
    import pytest

    from cdp.errors import InvalidInput
    from cdp.settings import Settings

    assert Settings.from_env({"CDP_ENV": " Production "}).is_production
    assert not Settings.from_env({}).is_production
    with pytest.raises(InvalidInput) as caught:
        Settings.from_env({"CDP_ENV": "prod"})
    assert caught.value.errors[0].field == "CDP_ENV"
