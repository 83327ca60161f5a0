/*
 * Short-Weierstrass group arithmetic (a = 0) over the field FE, included once per group by
 * g16.c with FE, FE_ONE, G(name) and the fe_* operations defined. Points at rest are affine
 * with (0, 0) for infinity, as snarkjs stores them; sums are kept in XYZZ coordinates
 * (x = X/ZZ, y = Y/ZZZ, ZZ^3 = ZZZ^2), which add an affine point in 8M + 2S.
 */

typedef struct { FE x, y; } G(aff);
typedef struct { FE x, y, zz, zzz; } G(xyzz);

INLINE int G(aff_is_zero)(const G(aff) *p) { return fe_is_zero(&p->x) && fe_is_zero(&p->y); }
INLINE int G(is_inf)(const G(xyzz) *p) { return fe_is_zero(&p->zz); }
INLINE void G(set_inf)(G(xyzz) *p) { memset(p, 0, sizeof *p); }

static void G(dbl)(G(xyzz) *r, const G(xyzz) *p) {
    if (G(is_inf)(p)) {
        *r = *p;
        return;
    }
    FE U, V, W, S, M, t, x3, wy;
    fe_add(&U, &p->y, &p->y);
    fe_sqr(&V, &U);
    fe_mul(&W, &U, &V);
    fe_mul(&S, &p->x, &V);
    fe_sqr(&M, &p->x);
    fe_add(&t, &M, &M);
    fe_add(&M, &M, &t);
    fe_sqr(&x3, &M);
    fe_sub(&x3, &x3, &S);
    fe_sub(&x3, &x3, &S);
    fe_sub(&t, &S, &x3);
    fe_mul(&t, &M, &t);
    fe_mul(&wy, &W, &p->y);
    fe_sub(&r->y, &t, &wy);
    fe_mul(&r->zz, &V, &p->zz);
    fe_mul(&r->zzz, &W, &p->zzz);
    r->x = x3;
}

INLINE void G(from_aff)(G(xyzz) *r, const FE *x, const FE *y) {
    r->x = *x;
    r->y = *y;
    r->zz = FE_ONE;
    r->zzz = FE_ONE;
}

/* r += (q.x, neg ? -q.y : q.y); q is not infinity. */
static void G(add_aff)(G(xyzz) *r, const G(aff) *q, int neg) {
    FE y2 = q->y;
    if (neg) fe_neg(&y2, &y2);
    if (G(is_inf)(r)) {
        G(from_aff)(r, &q->x, &y2);
        return;
    }
    FE U2, S2, P, R, PP, PPP, Q, t, x3, yp;
    fe_mul(&U2, &q->x, &r->zz);
    fe_mul(&S2, &y2, &r->zzz);
    fe_sub(&P, &U2, &r->x);
    fe_sub(&R, &S2, &r->y);
    if (fe_is_zero(&P)) {
        if (fe_is_zero(&R)) {
            G(xyzz) a;
            G(from_aff)(&a, &q->x, &y2);
            G(dbl)(r, &a);
        } else {
            G(set_inf)(r);
        }
        return;
    }
    fe_sqr(&PP, &P);
    fe_mul(&PPP, &P, &PP);
    fe_mul(&Q, &r->x, &PP);
    fe_sqr(&x3, &R);
    fe_sub(&x3, &x3, &PPP);
    fe_sub(&x3, &x3, &Q);
    fe_sub(&x3, &x3, &Q);
    fe_sub(&t, &Q, &x3);
    fe_mul(&t, &R, &t);
    fe_mul(&yp, &r->y, &PPP);
    fe_sub(&r->y, &t, &yp);
    fe_mul(&r->zz, &r->zz, &PP);
    fe_mul(&r->zzz, &r->zzz, &PPP);
    r->x = x3;
}

/* r += q */
static void G(add)(G(xyzz) *r, const G(xyzz) *q) {
    if (G(is_inf)(q)) return;
    if (G(is_inf)(r)) {
        *r = *q;
        return;
    }
    FE U1, U2, S1, S2, P, R, PP, PPP, Q, t, x3, yp;
    fe_mul(&U1, &r->x, &q->zz);
    fe_mul(&U2, &q->x, &r->zz);
    fe_mul(&S1, &r->y, &q->zzz);
    fe_mul(&S2, &q->y, &r->zzz);
    fe_sub(&P, &U2, &U1);
    fe_sub(&R, &S2, &S1);
    if (fe_is_zero(&P)) {
        if (fe_is_zero(&R)) {
            G(dbl)(r, r);
        } else {
            G(set_inf)(r);
        }
        return;
    }
    fe_sqr(&PP, &P);
    fe_mul(&PPP, &P, &PP);
    fe_mul(&Q, &U1, &PP);
    fe_sqr(&x3, &R);
    fe_sub(&x3, &x3, &PPP);
    fe_sub(&x3, &x3, &Q);
    fe_sub(&x3, &x3, &Q);
    fe_sub(&t, &Q, &x3);
    fe_mul(&t, &R, &t);
    fe_mul(&yp, &S1, &PPP);
    fe_sub(&r->y, &t, &yp);
    fe_mul(&r->zz, &r->zz, &q->zz);
    fe_mul(&r->zz, &r->zz, &PP);
    fe_mul(&r->zzz, &r->zzz, &q->zzz);
    fe_mul(&r->zzz, &r->zzz, &PPP);
    r->x = x3;
}

/* Affine from XYZZ given 1/ZZZ: 1/ZZ = (ZZ/ZZZ)^2 because ZZ^3 = ZZZ^2. */
INLINE void G(to_aff_with)(G(aff) *out, const G(xyzz) *p, const FE *izzz) {
    FE izz;
    fe_mul(&izz, &p->zz, izzz);
    fe_sqr(&izz, &izz);
    fe_mul(&out->x, &p->x, &izz);
    fe_mul(&out->y, &p->y, izzz);
}

/* n points to affine with one inversion (Montgomery's trick); scratch holds n elements. */
static void G(batch_to_aff)(G(aff) *out, const G(xyzz) *in, size_t n, FE *scratch) {
    FE acc = FE_ONE, inv;
    for (size_t i = 0; i < n; i++) {
        if (G(is_inf)(&in[i])) continue;
        scratch[i] = acc;
        fe_mul(&acc, &acc, &in[i].zzz);
    }
    fe_inv(&acc, &acc);
    for (size_t i = n; i-- > 0;) {
        if (G(is_inf)(&in[i])) {
            memset(&out[i], 0, sizeof out[i]);
            continue;
        }
        fe_mul(&inv, &acc, &scratch[i]);
        fe_mul(&acc, &acc, &in[i].zzz);
        G(to_aff_with)(&out[i], &in[i], &inv);
    }
}

static void G(to_aff)(G(aff) *out, const G(xyzz) *p) {
    FE scratch;
    G(batch_to_aff)(out, p, 1, &scratch);
}

/* -- Pippenger's multi-scalar multiplication ---------------------------------------------- */

/* One window's sum, sum_b (b + 1) S_b, by a running sum from the top bucket down. */
static void G(weigh)(G(xyzz) *out, const G(xyzz) *buckets, size_t nb) {
    G(xyzz) running, sum;
    G(set_inf)(&running);
    G(set_inf)(&sum);
    for (size_t b = nb; b-- > 0;) {
        G(add)(&running, &buckets[b]);
        G(add)(&sum, &running);
    }
    *out = sum;
}

/* Buckets kept in XYZZ coordinates: a mixed addition (8M + 2S) per digit. */
static void G(window_xyzz)(const G(aff) *points, const int16_t *d, size_t n, int c,
                           G(xyzz) *buckets, G(xyzz) *out) {
    size_t nb = (size_t)1 << (c - 1);
    for (size_t b = 0; b < nb; b++) G(set_inf)(&buckets[b]);
    for (size_t i = 0; i < n; i++) {
        if (d[i] > 0) G(add_aff)(&buckets[d[i] - 1], &points[i], 0);
        else if (d[i] < 0) G(add_aff)(&buckets[-d[i] - 1], &points[i], 1);
    }
    G(weigh)(out, buckets, nb);
}

/* Buckets kept affine, (0, 0) when empty, their additions gathered into batches that share one
 * inversion (Montgomery's trick): an affine addition costs 2M + 1S and about 3M of the batch's
 * inversion, against 8M + 2S in XYZZ. A digit whose bucket already waits in the batch goes to
 * that bucket's XYZZ spill instead (as in window_xyzz), so a bucket that holds most points
 * (scalars 1 are common in witnesses) costs no more than in window_xyzz. */
#ifndef AFF_BATCH /* once for both groups */
#define AFF_BATCH 1024 /* most additions sharing one inversion */
#define AFF_BUSY 1     /* flags per bucket: waits in the batch, */
#define AFF_SPILLED 2  /* has an XYZZ spill */
/* Windows of at least this many bits take the affine buckets: narrower ones have too few
 * buckets for batches long enough to pay for their inversion. */
#define AFF_MIN_BITS 13
#endif

typedef struct {
    uint32_t bucket;
    uint32_t point;
    int neg;
    int kind; /* 0: add, 1: double (same point), 2: opposite points (the bucket empties) */
} G(pending);

typedef struct {
    G(aff) *acc;
    G(xyzz) *spill;
    uint8_t *flags;
    G(pending) *batch;
    FE *den, *prefix;
} G(aff_scratch);

/* A batch's buffers (AFF_BATCH entries) and `nflags` zeroed bucket flags; acc and spill are the
 * caller's. 0, or -1 when out of memory (G(scratch_free) frees what was made either way). */
static int G(scratch_init)(G(aff_scratch) *s, size_t nflags) {
    *s = (G(aff_scratch)){NULL, NULL, calloc(nflags, 1), malloc(AFF_BATCH * sizeof(G(pending))),
                          malloc(AFF_BATCH * sizeof(FE)), malloc(AFF_BATCH * sizeof(FE))};
    return s->flags && s->batch && s->den && s->prefix ? 0 : -1;
}

static void G(scratch_free)(G(aff_scratch) *s) {
    free(s->flags);
    free(s->batch);
    free(s->den);
    free(s->prefix);
}

static void G(flush)(const G(aff) *points, G(aff_scratch) *s, size_t m) {
    if (m == 0) return;
    /* denominators: x_q - x_b to add, 2 y_b to double, 1 where the bucket empties */
    for (size_t k = 0; k < m; k++) {
        G(pending) *e = &s->batch[k];
        const G(aff) *q = &points[e->point], *b = &s->acc[e->bucket];
        FE y = q->y;
        if (e->neg) fe_neg(&y, &y);
        fe_sub(&s->den[k], &q->x, &b->x);
        e->kind = 0;
        if (fe_is_zero(&s->den[k])) {
            FE dy;
            fe_sub(&dy, &y, &b->y);
            e->kind = fe_is_zero(&dy) ? 1 : 2;
            if (e->kind == 1) fe_add(&s->den[k], &b->y, &b->y);
            else s->den[k] = FE_ONE;
        }
        if (k == 0) s->prefix[0] = s->den[0];
        else fe_mul(&s->prefix[k], &s->prefix[k - 1], &s->den[k]);
    }
    FE inv, inv_k;
    fe_inv(&inv, &s->prefix[m - 1]);
    for (size_t k = m; k-- > 0;) {
        G(pending) *e = &s->batch[k];
        if (k > 0) {
            fe_mul(&inv_k, &inv, &s->prefix[k - 1]);
            fe_mul(&inv, &inv, &s->den[k]);
        } else {
            inv_k = inv;
        }
        G(aff) *b = &s->acc[e->bucket];
        s->flags[e->bucket] &= (uint8_t)~AFF_BUSY;
        if (e->kind == 2) {
            memset(b, 0, sizeof *b);
            continue;
        }
        const G(aff) *q = &points[e->point];
        FE lambda, t, x3;
        if (e->kind == 0) { /* (y_q - y_b) / (x_q - x_b) */
            FE y = q->y;
            if (e->neg) fe_neg(&y, &y);
            fe_sub(&t, &y, &b->y);
        } else { /* 3 x_b^2 / 2 y_b */
            FE x2;
            fe_sqr(&x2, &b->x);
            fe_add(&t, &x2, &x2);
            fe_add(&t, &t, &x2);
        }
        fe_mul(&lambda, &t, &inv_k);
        fe_sqr(&x3, &lambda);
        fe_sub(&x3, &x3, &b->x);
        fe_sub(&x3, &x3, &q->x);
        fe_sub(&t, &b->x, &x3);
        fe_mul(&t, &lambda, &t);
        fe_sub(&b->y, &t, &b->y);
        b->x = x3;
    }
}

static void G(window_affine)(const G(aff) *points, const int16_t *d, size_t n, int c,
                             G(aff_scratch) *s, G(xyzz) *out) {
    size_t nb = (size_t)1 << (c - 1), m = 0;
    size_t limit = nb / 8 < AFF_BATCH ? nb / 8 : AFF_BATCH;
    memset(s->acc, 0, nb * sizeof *s->acc);
    memset(s->flags, 0, nb);
    for (size_t i = 0; i < n; i++) {
        if (d[i] == 0) continue;
        uint32_t b = (uint32_t)(d[i] > 0 ? d[i] : -d[i]) - 1;
        int neg = d[i] < 0;
        if (s->flags[b] & AFF_BUSY) {
            if (!(s->flags[b] & AFF_SPILLED)) G(set_inf)(&s->spill[b]);
            s->flags[b] |= AFF_SPILLED;
            G(add_aff)(&s->spill[b], &points[i], neg);
        } else if (G(aff_is_zero)(&s->acc[b])) {
            s->acc[b] = points[i];
            if (neg) fe_neg(&s->acc[b].y, &s->acc[b].y);
        } else {
            s->flags[b] |= AFF_BUSY;
            s->batch[m++] = (G(pending)){b, (uint32_t)i, neg, 0};
            if (m == limit) {
                G(flush)(points, s, m);
                m = 0;
            }
        }
    }
    G(flush)(points, s, m);
    G(xyzz) running, sum;
    G(set_inf)(&running);
    G(set_inf)(&sum);
    for (size_t b = nb; b-- > 0;) {
        if (!G(aff_is_zero)(&s->acc[b])) G(add_aff)(&running, &s->acc[b], 0);
        if (s->flags[b] & AFF_SPILLED) G(add)(&running, &s->spill[b]);
        G(add)(&sum, &running);
    }
    *out = sum;
}

/* The MSM's shared state: digits are made by point ranges (one per thread), then the threads
 * take (window, part) jobs in turn, each the sum of one window over one range of the points. */
typedef struct {
    const G(aff) *points;
    const fr *scalars;
    int16_t *digits; /* nwin rows of n signed digits */
    size_t n;
    int c, nwin, parts, nthreads;
    G(xyzz) *partial; /* nwin * parts window sums */
    size_t next;      /* the next job to take (atomic) */
    int failed;       /* set by a thread out of memory (atomic) */
} G(msm_ctx);

/* Signed c-bit digits in [-2^(c-1), 2^(c-1)] of this thread's points' scalars; 0 for a point
 * at infinity. */
static void G(msm_digits)(void *arg, int t) {
    G(msm_ctx) *ctx = arg;
    int c = ctx->c;
    int32_t half = 1 << (c - 1), full = 1 << c, mask = full - 1;
    size_t lo = share(ctx->n, (uint64_t)t, (uint64_t)ctx->nthreads);
    size_t hi = share(ctx->n, (uint64_t)t + 1, (uint64_t)ctx->nthreads);
    for (size_t i = lo; i < hi; i++) {
        int zero = G(aff_is_zero)(&ctx->points[i]);
        int32_t carry = 0;
        for (int w = 0; w < ctx->nwin; w++) {
            int off = w * c, limb = off / 64, sh = off % 64;
            uint64_t v = limb < 4 ? ctx->scalars[i].v[limb] >> sh : 0;
            if (sh + c > 64 && limb + 1 < 4) v |= ctx->scalars[i].v[limb + 1] << (64 - sh);
            int32_t d = (int32_t)(v & (uint64_t)mask) + carry;
            carry = d > half;
            if (carry) d -= full;
            ctx->digits[(size_t)w * ctx->n + i] = zero ? 0 : (int16_t)d;
        }
    }
}

static void G(msm_jobs)(void *arg, int t) {
    (void)t;
    G(msm_ctx) *ctx = arg;
    size_t nb = (size_t)1 << (ctx->c - 1), total = (size_t)ctx->nwin * (size_t)ctx->parts;
    int affine = ctx->c >= AFF_MIN_BITS && ctx->n <= UINT32_MAX; /* 32-bit point indexes */
    G(xyzz) *buckets = malloc(nb * sizeof(G(xyzz))); /* window_xyzz's, or the affine spills */
    G(aff_scratch) s = {0};
    int ready = buckets != NULL;
    if (affine) {
        ready = G(scratch_init)(&s, nb) == 0 && ready;
        s.acc = malloc(nb * sizeof(G(aff)));
        s.spill = buckets;
        ready = ready && s.acc;
    }
    if (!ready) {
        __atomic_store_n(&ctx->failed, 1, __ATOMIC_RELAXED);
    } else {
        for (;;) {
            size_t k = __atomic_fetch_add(&ctx->next, 1, __ATOMIC_RELAXED);
            if (k >= total) break;
            size_t w = k / (size_t)ctx->parts, part = k % (size_t)ctx->parts;
            size_t lo = share(ctx->n, part, (uint64_t)ctx->parts);
            size_t hi = share(ctx->n, part + 1, (uint64_t)ctx->parts);
            const int16_t *d = ctx->digits + w * ctx->n + lo;
            if (affine) G(window_affine)(ctx->points + lo, d, hi - lo, ctx->c, &s, &ctx->partial[k]);
            else G(window_xyzz)(ctx->points + lo, d, hi - lo, ctx->c, buckets, &ctx->partial[k]);
        }
    }
    free(buckets);
    free(s.acc);
    G(scratch_free)(&s);
}

/* sum_i scalars[i] * points[i] into *out (affine, (0, 0) for infinity). Scalars are normal-form
 * Fr values (below 2^255); c is the window width in bits (2..15); each window's points are cut
 * into `parts` ranges (1..64), so that nthreads threads share nwin * parts jobs evenly (see
 * worker/groth16/msm.py). Returns 0, or -1 when out of memory or c or parts is out of range. */
int G(msm)(const G(aff) *points, const fr *scalars, size_t n, int c, int parts, int nthreads,
           G(aff) *out) {
    if (c < 2 || c > 15 || parts < 1 || parts > 64) return -1;
    int nwin = (256 + c - 1) / c, jobs = nwin * parts;
    G(msm_ctx) ctx = {points, scalars, malloc((size_t)nwin * (n ? n : 1) * sizeof(int16_t)), n, c,
                      nwin, parts, thread_count(nthreads, n),
                      malloc((size_t)jobs * sizeof(G(xyzz))), 0, 0};
    int rc = -1;
    if (!ctx.digits || !ctx.partial) goto done;
    run_threads(G(msm_digits), &ctx, ctx.nthreads);
    run_threads(G(msm_jobs), &ctx, thread_count(nthreads, (uint64_t)jobs));
    if (ctx.failed) goto done;
    G(xyzz) acc;
    G(set_inf)(&acc);
    for (int w = nwin - 1; w >= 0; w--) {
        for (int k = 0; k < c; k++) G(dbl)(&acc, &acc); /* nothing to do while at infinity */
        for (int part = 0; part < parts; part++) G(add)(&acc, &ctx.partial[w * parts + part]);
    }
    G(to_aff)(out, &acc);
    rc = 0;
done:
    free(ctx.digits);
    free(ctx.partial);
    return rc;
}

/* -- fixed-base multiplication of one point by many scalars (the dev setup) --------------- */

#define FB_WINDOWS 32 /* 8-bit windows over 256-bit scalars */

typedef struct {
    const G(aff) *table; /* FB_WINDOWS rows of 256 multiples; entry 0 unused */
    const fr *scalars;
    G(aff) *out;
    size_t n;
    int nthreads;
    int failed; /* atomic */
} G(fb_ctx);

/* This thread's scalars in chunks: each chunk's results are affine sums in `out` itself, one
 * table entry added per window and non-zero byte, each window's additions batched around one
 * inversion (G(flush), as the MSM's buckets are). */
static void G(fb_run)(void *arg, int t) {
    G(fb_ctx) *ctx = arg;
    enum { CHUNK = AFF_BATCH };
    size_t begin = share(ctx->n, (uint64_t)t, (uint64_t)ctx->nthreads);
    size_t end = share(ctx->n, (uint64_t)t + 1, (uint64_t)ctx->nthreads);
    G(aff_scratch) s;
    if (G(scratch_init)(&s, CHUNK) != 0) {
        __atomic_store_n(&ctx->failed, 1, __ATOMIC_RELAXED);
    } else {
        for (size_t lo = begin; lo < end; lo += CHUNK) {
            size_t m = end - lo < CHUNK ? end - lo : CHUNK;
            s.acc = &ctx->out[lo];
            memset(s.acc, 0, m * sizeof(G(aff)));
            for (int w = 0; w < FB_WINDOWS; w++) {
                size_t pending = 0;
                for (size_t k = 0; k < m; k++) {
                    uint8_t byte = ((const uint8_t *)ctx->scalars[lo + k].v)[w];
                    if (!byte) continue;
                    uint32_t entry = (uint32_t)w * 256 + byte;
                    if (G(aff_is_zero)(&s.acc[k])) s.acc[k] = ctx->table[entry];
                    else s.batch[pending++] = (G(pending)){(uint32_t)k, entry, 0, 0};
                }
                G(flush)(ctx->table, &s, pending);
            }
        }
    }
    G(scratch_free)(&s);
}

/* out[i] = scalars[i] * base for normal-form scalars; (0, 0) for a zero scalar. Returns 0, or
 * -1 when out of memory. */
int G(batch_mul)(const G(aff) *base, const fr *scalars, size_t n, int nthreads, G(aff) *out) {
    size_t entries = (size_t)FB_WINDOWS * 256;
    G(xyzz) *jac = malloc(entries * sizeof(G(xyzz)));
    G(aff) *table = malloc(entries * sizeof(G(aff)));
    FE *scratch = malloc(entries * sizeof(FE));
    int rc = -1;
    if (!jac || !table || !scratch) goto done;
    G(xyzz) step;
    G(from_aff)(&step, &base->x, &base->y);
    for (int w = 0; w < FB_WINDOWS; w++) {
        G(xyzz) *row = jac + (size_t)w * 256;
        G(set_inf)(&row[0]);
        row[1] = step;
        for (int d = 2; d < 256; d++) {
            row[d] = row[d - 1];
            G(add)(&row[d], &step);
        }
        G(dbl)(&step, &row[128]);
    }
    G(batch_to_aff)(table, jac, entries, scratch);
    nthreads = thread_count(nthreads, n);
    G(fb_ctx) ctx = {table, scalars, out, n, nthreads, 0};
    run_threads(G(fb_run), &ctx, nthreads);
    rc = ctx.failed ? -1 : 0;
done:
    free(jac);
    free(table);
    free(scratch);
    return rc;
}
