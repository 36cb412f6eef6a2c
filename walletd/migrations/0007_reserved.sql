-- walletd migration 0007: reserved. This number belongs to a migration written on another branch; this
-- placeholder only keeps versions running 1..N without gaps until that branch is merged. When
-- merging it, delete this file (its migration takes the number).
SELECT 1;
