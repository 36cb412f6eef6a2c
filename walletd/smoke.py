"""`walletd smoke --base-url URL`: an end-to-end check against a live deployment.

It registers a throwaway user, logs in, reads wallets and a quote; with --operator-key it also
registers a service user, deposits, settles and transfers. Prints one line per step; exits 1 on
the first failure. (The original served its tests from an endpoint; walletd never does.)
"""

from __future__ import annotations

import uuid

import aiohttp


class SmokeFailure(Exception):
    pass


async def _call(session: aiohttp.ClientSession, method: str, url: str, expect: int = 200, **kwargs) -> dict:
    async with session.request(method, url, **kwargs) as response:
        body = await response.json(content_type=None)
        if response.status != expect:
            raise SmokeFailure(f"{method} {url.split('?')[0]} answered {response.status}: {body}")
        return body


async def run_smoke(base_url: str, operator_key: str | None) -> int:
    base = base_url.rstrip("/")
    name = f"smoke_{uuid.uuid4().hex[:10]}"
    password = "Sm0ke!" + uuid.uuid4().hex[:8]
    steps = 0
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            async def step(label, coro):
                nonlocal steps
                result = await coro
                steps += 1
                print(f"ok  {label}")
                return result

            await step("health", _call(s, "GET", f"{base}/health"))
            await step("ready", _call(s, "GET", f"{base}/ready"))
            await step("openapi", _call(s, "GET", f"{base}/openapi.json"))
            user = {"username": name, "email": f"{name}@example.com", "password": password}
            await step("register", _call(s, "POST", f"{base}/auth/register", json=user))
            token = (await step("login", _call(s, "POST", f"{base}/auth/login",
                                               json={"username": name, "password": password})))["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            wallets = (await step("wallets", _call(s, "GET", f"{base}/user/wallets", headers=auth)))["wallets"]
            await step("exchange quote", _call(s, "POST", f"{base}/wallet/exchange", headers=auth,
                                               json={"from_currency": 1, "to_currency": 2, "amount": "1"}))
            if operator_key:
                svc = {"username": name + "_svc", "email": f"{name}_svc@example.com", "password": password}
                service = await step("register service", _call(s, "POST", f"{base}/auth/register_service",
                                                               json=svc, headers={"X-Operator-Key": operator_key}))
                svc_auth = {"Authorization": f"Bearer {service['access_token']}"}
                deposit = await step("deposit", _call(s, "POST", f"{base}/wallet/deposit", headers=auth, json={
                    "service_user_id": service["user_id"], "wallet_id": wallets[0]["id"], "amount": "10"}))
                await step("settle", _call(s, "PUT", f"{base}/service/transaction/deposit", headers=svc_auth,
                                           json={"transaction_id": deposit["id"], "new_status": "paid"}))
                await step("transfer", _call(s, "POST", f"{base}/wallet/transfer", headers=auth, json={
                    "source_wallet_id": wallets[0]["id"], "target_wallet_id": wallets[1]["id"], "amount": "1"}))
                await step("history", _call(s, "GET", f"{base}/user/transactions", headers=auth))
    except (SmokeFailure, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"FAIL after {steps} step(s): {exc}")
        return 1
    print(f"smoke: {steps} steps passed")
    return 0
