"""`walletd demo` (`make demo`): seed a running walletd with something to play with.

Registers a payment service user and two users, funds them through the real deposit path
(request, then the service settles it paid: 1% commission), and prints their tokens, wallet ids
and ready-to-paste curl lines. Everything is named `demo_<kind>_<run>`, so runs never collide
and demo data is easy to tell apart. It needs the operator key (to register the service user).
"""

from __future__ import annotations

import secrets
import time

import aiohttp

from walletd.smoke import SmokeFailure, call

FUNDING = (("alice", 1, "1000"), ("bob", 2, "500"))  # (name, currency id, amount deposited)


async def run_demo(base_url: str, operator_key: str | None, key_source: str = "--operator-key") -> int:
    if not operator_key:
        print(f"demo: needs the operator key to register the payment service; {key_source}")
        return 2
    base = base_url.rstrip("/")
    run = f"{int(time.time()) % 100000}{secrets.randbelow(1000):03d}"
    password = f"Demo-{secrets.token_hex(4)}-9"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            service_name = f"demo_pay_{run}"
            service = await call(s, "POST", f"{base}/auth/register_service", headers={"X-Operator-Key": operator_key},
                                 json=_account(service_name, password))
            service_auth = {"Authorization": f"Bearer {service['access_token']}"}
            users = []
            for name, currency_id, amount in FUNDING:
                username = f"demo_{name}_{run}"
                token = (await call(s, "POST", f"{base}/auth/register", json=_account(username, password)))[
                    "access_token"]
                auth = {"Authorization": f"Bearer {token}"}
                wallets = (await call(s, "GET", f"{base}/user/wallets", headers=auth))["wallets"]
                target = next(w for w in wallets if w["currency_id"] == currency_id)
                deposit = await call(s, "POST", f"{base}/wallet/deposit", headers=auth, json={
                    "service_user_id": service["user_id"], "wallet_id": target["id"], "amount": amount})
                await call(s, "PUT", f"{base}/service/transaction/deposit", headers=service_auth,
                           json={"transaction_id": deposit["id"], "new_status": "paid"})
                wallets = (await call(s, "GET", f"{base}/user/wallets", headers=auth))["wallets"]
                users.append({"username": username, "token": token, "wallets": wallets})
    except (SmokeFailure, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"demo: FAILED: {exc}")
        return 1
    _print_guide(base, password, service_name, service, users)
    return 0


def _account(username: str, password: str) -> dict:
    return {"username": username, "email": f"{username}@example.com", "password": password}


def _print_guide(base: str, password: str, service_name: str, service: dict, users: list[dict]) -> None:
    alice, bob = users
    print(f"demo: seeded {base} (every account's password: {password})\n")
    print(f"payment service  {service_name}  user id {service['user_id']}")
    print(f"  SERVICE_TOKEN='{service['access_token']}'\n")
    for user in users:
        print(f"user  {user['username']}")
        for wallet in user["wallets"]:
            print(f"  {wallet['currency']} wallet {wallet['id']}  balance {wallet['balance']}")
        print(f"  {user['username'].split('_')[1].upper()}_TOKEN='{user['token']}'\n")
    source = alice["wallets"][0]["id"]
    target = next(w for w in bob["wallets"] if w["currency_id"] == 2)["id"]
    print("try (paste the TOKEN lines above first; tokens expire after WALLETD_TOKEN_TTL seconds):")
    print(f"  curl -sS '{base}/user/wallets' -H \"token: $ALICE_TOKEN\"")
    print(f"  curl -sS -X POST '{base}/wallet/transfer?source_wallet_id={source}&target_wallet_id={target}"
          f"&amount=25' -H \"token: $ALICE_TOKEN\"")
    print(f"  curl -sS '{base}/user/transactions?limit=5' -H \"token: $BOB_TOKEN\"")
    print(f"  curl -sS -G '{base}/service/auth/login' --data-urlencode 'username={service_name}' "
          f"--data-urlencode 'password={password}'")
