from tests.conftest import Bridge, referral_resource


async def test_referral_round_trip(bridge: Bridge) -> None:
    service = await bridge.service()
    key = await bridge.key()
    response = await bridge.refer(key, referral_resource(service))
    assert response.status_code == 201, response.text
