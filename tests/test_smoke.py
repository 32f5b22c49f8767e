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
