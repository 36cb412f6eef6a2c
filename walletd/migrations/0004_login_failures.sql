-- walletd migration 0003 (issue 7, login throttling): failed-login counters shared by every
-- walletd process (walletd/auth/throttle.py, walletd/persistence/login_failures.py).
-- scope 'username' (key: first 16 hex of sha256 of the typed name, never the name itself) or
-- 'address' (the client's address). A fixed window starts at window_start; walletd prunes
-- rows whose window has ended.
CREATE TABLE login_failures (
    scope        text NOT NULL CHECK (scope IN ('username', 'address')),
    key          text NOT NULL,
    window_start timestamptz NOT NULL,
    failures     integer NOT NULL CHECK (failures > 0),
    PRIMARY KEY (scope, key)
);
