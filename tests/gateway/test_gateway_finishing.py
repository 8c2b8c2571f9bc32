"""The gateway refuses a disclaimer that cannot be legible on the ordered video (422 naming the field)."""

from gateway_harness import Gateway

LONG = "Terms and conditions apply; offer valid in participating stores only while stocks last. " * 3


async def test_an_unfittable_disclaimer_is_a_422_naming_the_field(gw: Gateway) -> None:
    body = {
        "prompt": "A sunny ad for lemonade",
        "aspect_ratio": "9:16",
        "brand": {"name": "Acme", "guidelines": {"required_disclaimer": LONG}},
    }
    for path in ("/api/v1/generations", "/api/v1/estimates"):
        resp = await gw.client.post(path, json=body)
        assert resp.status == 422, await resp.text()
        error = (await resp.json())["error"]
        assert error["code"] == "validation_error"
        assert [d["field"] for d in error["details"]] == ["brand.guidelines.required_disclaimer"]
        assert "legible" in error["details"][0]["message"]


async def test_the_same_disclaimer_fits_a_landscape_video_and_a_short_one_fits_any(gw: Gateway) -> None:
    await gw.create(aspect_ratio="16:9", brand={"name": "Acme", "guidelines": {"required_disclaimer": LONG}})
    await gw.create(
        aspect_ratio="9:16", brand={"name": "Acme", "guidelines": {"required_disclaimer": "18+."}}
    )
