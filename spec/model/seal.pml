/*
 * seal.pml: the seal of lnd's KV store by oneway, with lnd running beside it.
 *
 * Issue 9. lnd reads the tombstone once, when it starts; a running lnd keeps
 * writing to the KV store after oneway sealed it. This model checks the
 * protocol that closes that hole, and shows the hole in today's protocol.
 *
 * Variants (C preprocessor switches, `spin -DNAME -a seal.pml`):
 *   (none)         the NEW protocol, with the rule the model added (R6 below)
 *   OLD_PROTOCOL   today's protocol: no holder check, no re-sync after the
 *                  tombstone; expected to violate `safe`
 *   AS_BRIEFED     the NEW protocol exactly as first described: in Verified
 *                  with the tombstone present and the KV changed, refuse;
 *                  expected to violate the liveness property `live`
 *   NO_GUARD       (combinable) lnd is started on KV without the init
 *                  container's guard, relying on its own tombstone read;
 *                  with MAXLOSS > 0 expected to violate `safe`
 *
 * Bounds (also -D switches): WMAX, MAXRUNS, MAXCRASH, MAXLOSS.
 *
 * Abstractions (see spec/protocol.md):
 *   - KV content is the number `w` of lnd's KV writes (only grows; capped at
 *     WMAX). "The native store has caught up with w" is `nat == w`.
 *   - A digest or data_version witness recorded at verification is the
 *     number `ver_w` of writes the verified snapshot held; "KV unchanged
 *     since Verified / since the tombstone commit" is `w == ver_w` (a
 *     tombstone commit requires w == ver_w, and the tombstone is not
 *     content, so both witnesses are the same number).
 *   - Every durable write (a native transaction, the KV tombstone
 *     transaction) is one atomic Promela step; oneway may crash between any
 *     two of them (at most MAXCRASH times), losing only its locals.
 *   - "Another process holds the KV store open" is `kv == RUNNING`.
 *   - File identity, the five-pass limit, batch boundaries: not modelled.
 */

#ifndef WMAX
#define WMAX 2        /* lnd's KV writes, in total */
#endif
#ifndef MAXRUNS
#define MAXRUNS 3     /* lnd starts (either backend), in total */
#endif
#ifndef MAXCRASH
#define MAXCRASH 2    /* oneway crashes, in total */
#endif
#ifndef MAXLOSS
#define MAXLOSS 1     /* tombstone losses (restored KV backup), in total */
#endif

/* persisted state (oneway_state.state) */
#define FRESH      0
#define MIGRATING  1
#define VERIFIED   2
#define TOMBSTONED 3
#define LOCKED     4

/* lnd on the KV backend */
#define STOPPED  0
#define STARTING 1   /* the guard said kv; lnd has not read the tombstone yet */
#define RUNNING  2   /* lnd read no tombstone; holds the KV file open */

byte st = FRESH;     /* native: persisted state */
byte nat = 0;        /* native: holds every KV write up to number nat */
byte ver_w = 0;      /* native: witness of the last verification (KV write count) */
bit  ts = 0;         /* KV: invoice-tombstone present */
byte w = 0;          /* KV: number of lnd writes so far */

byte kv = STOPPED;   /* lnd on KV */
bit  sq = 0;         /* lnd on native SQL running */
bit  native_used = 0;/* lnd has started on the native store at least once */
byte runs = 0;       /* lnd starts so far */
byte crashes = 0;    /* oneway crashes so far */
byte losses = 0;     /* tombstone losses so far */
bit  retired = 0;    /* operator: lnd is stopped for good */

/* fsm::backend_decision, for the two backends */
#define NATIVE_MISSING (ts && st <= MIGRATING)
#define SEALED         (st == TOMBSTONED || st == LOCKED)
#define GUARD_KV       (!NATIVE_MISSING && !ts && !SEALED)
#define GUARD_SQL      (!NATIVE_MISSING && st == LOCKED)
/* What the operator's start of lnd on KV checks before lnd itself does. */
#ifdef NO_GUARD
#define KV_START_OK 1
#else
#define KV_START_OK GUARD_KV
#endif

/* ------------------------------------------------------------------ */
/* Properties (checked with ./pan -a -N <name>; `live` also with -f).  */

/* Never Locked while the KV store holds a write the native store lacks,
 * unless lnd has since started on the native store. */
ltl safe     { [] !(st == LOCKED && w != nat && !native_used) }
/* The guard never allows both backends. */
ltl oneguard { [] !(GUARD_KV && GUARD_SQL) }
/* lnd never runs on KV and on native at once (two lnd pods, or a rolling
 * update that starts the new one before the old one stops). */
ltl onelnd   { [] !(kv == RUNNING && sq) }
/* lnd never runs on KV once oneway is Locked. */
ltl kvnotlocked { [] !(kv == RUNNING && st == LOCKED) }
/* No dead end: once lnd is stopped for good, oneway's reruns reach Locked
 * with the tombstone present. (`retired` is stable once set.) */
ltl live     { [] (retired -> <> (st == LOCKED && ts)) }

/* Coverage: claims that MUST fail, showing the model reaches the cases the
 * protocol is about (check.sh requires a counterexample for each). */
/* lnd runs on KV with the tombstone present: the start-up race happened. */
ltl race       { [] !(kv == RUNNING && ts) }
/* Tombstoned with KV writes after the verified witness: a re-sync is due. */
ltl tombresync { [] !(st == TOMBSTONED && w != ver_w) }
/* lnd runs on the native store. */
ltl nativerun  { [] !sq }

/* ------------------------------------------------------------------ */
/* lnd and the operator                                                */

active proctype env()
{
end_env:
  do
  /* Start lnd on KV: the init container's guard allows kv... */
  :: atomic { !retired && kv == STOPPED && runs < MAXRUNS && KV_START_OK ->
              kv = STARTING; runs++ }
  /* ...then lnd opens the file and reads the tombstone, once. */
  :: atomic { kv == STARTING ->
              if
              :: ts -> kv = STOPPED          /* lnd refuses to start */
              :: else -> assert(!ts); kv = RUNNING
              fi }
  /* A running lnd writes, any number of times, never re-checking. */
  :: atomic { kv == RUNNING && w < WMAX -> w++ }
  :: atomic { kv == RUNNING -> kv = STOPPED }
  /* Start lnd on native: only when the guard allows sql. */
  :: atomic { !retired && !sq && runs < MAXRUNS && GUARD_SQL ->
              assert(st == LOCKED); sq = 1; native_used = 1; runs++ }
  :: atomic { sq -> sq = 0 }
  /* The tombstone vanishes (a KV backup restored, a lost commit), only
   * after oneway recorded the seal and only with lnd down. */
  :: atomic { !retired && ts && SEALED && kv == STOPPED && !sq && losses < MAXLOSS ->
              ts = 0; losses++ }
  /* The operator stops starting lnd. */
  :: atomic { !retired && kv == STOPPED && !sq -> retired = 1 }
  od
}

/* ------------------------------------------------------------------ */
/* oneway migrate, rerun forever (each pass of the loop is one run of  */
/* the engine's step for the persisted state; a refusal or a crash     */
/* goes back to the top with the locals lost).                         */

inline crash_point() {
  if
  :: crashes < MAXCRASH -> crashes++; goto rerun
  :: true -> skip
  fi
}

active proctype oneway()
{
  byte out = 0;   /* outcome of the last KV transaction (in memory) */
#define OUT_SEAL   1
#define OUT_RESYNC 2
#define OUT_REFUSE 3

end_idle:
  if
  /* Begin: schema and state row, one transaction. */
  :: st == FRESH -> st = MIGRATING

  /* Migrating: copy while lnd may write. A copy/repair pass brings the
   * native store to a KV snapshot (batches, each durable); a verification
   * pass that finds nothing to repair records Verified with its witness
   * (one transaction). A pass that found changes is followed by another. */
  :: st == MIGRATING ->
       nat = w;
       crash_point();
       atomic {
         if
         :: w == nat -> st = VERIFIED; ver_w = nat   /* VerificationPassed */
         :: else -> skip                             /* repaired: pass again */
         fi
       }

  /* Verified: the tombstone step. */
  :: st == VERIFIED ->
#ifndef OLD_PROTOCOL
       /* R1: never seal under a running lnd. */
       if
       :: kv == RUNNING -> goto rerun     /* "stop lnd and rerun"; nothing written */
       :: else -> skip
       fi;
       crash_point();
       /* race window: lnd may start here and read no tombstone */
#endif
       /* One KV write transaction (BEGIN IMMEDIATE ... COMMIT, FULL). */
       atomic {
         if
         :: !ts && w == ver_w -> ts = 1; out = OUT_SEAL
         :: !ts && w != ver_w -> out = OUT_RESYNC
         :: ts && w == ver_w  -> out = OUT_SEAL     /* crash window: found */
#if defined(OLD_PROTOCOL) || defined(AS_BRIEFED)
         :: ts && w != ver_w  -> out = OUT_REFUSE   /* SourceChangedAfterTombstone */
#else
         /* R6 (added by the model): the tombstone is there, so the KV is
          * sealed whatever it holds; record Tombstoned and let the
          * Tombstoned step re-sync. lnd never served from native. */
         :: ts && w != ver_w  -> out = OUT_SEAL
#endif
         fi
       }
       crash_point();
       if
       :: out == OUT_SEAL   -> st = TOMBSTONED               /* TombstoneWritten */
       :: out == OUT_RESYNC -> st = MIGRATING                /* SourceChanged */
       :: out == OUT_REFUSE -> goto rerun                    /* refused, every rerun */
       fi

  /* Tombstoned: Lock, after the checks. */
  :: st == TOMBSTONED ->
#ifdef OLD_PROTOCOL
       if
       :: ts && w == ver_w -> skip
       :: else -> goto rerun                /* SourceChangedAfterTombstone */
       fi;
       crash_point();
       st = LOCKED                          /* Lock + migration_tracker */
#else
       /* R2: no other holder of the KV store. */
       if
       :: kv == RUNNING -> goto rerun       /* "stop lnd"; nothing written */
       :: else -> skip
       fi;
       crash_point();
       if
       :: w != ver_w ->
            /* R3: lnd started in the race window and wrote: re-sync. The
             * state stays Tombstoned; the copy brings the native store up
             * to the KV (batches), then a clean pass records the new
             * witness (event Resynced: Tombstoned -> Tombstoned). */
            nat = w;
            crash_point();
            atomic {
              if
              :: w == nat -> ver_w = nat
              :: else -> skip
              fi
            }
       :: w == ver_w && !ts ->
            /* R4: the tombstone vanished before Lock: put it back, in one
             * KV transaction, only over the verified content. */
            atomic {
              if
              :: w == ver_w && !ts -> ts = 1
              :: else -> skip
              fi
            }
       :: w == ver_w && ts ->
            crash_point();
            st = LOCKED                     /* Lock + migration_tracker */
       fi
#endif

  /* Locked with the tombstone missing: R5, restore it only over the
   * verified content, else refuse. (The guard already refuses kv.) */
  :: st == LOCKED && !ts ->
#ifndef OLD_PROTOCOL
       atomic {
         if
         :: w == ver_w -> ts = 1
         :: else -> skip                    /* refused, with instructions */
         fi
       }
#else
       goto rerun                           /* today: already_completed */
#endif
  fi;
rerun:
  out = 0;
  goto end_idle
}
