/* test_storage_units.c - the storage layer's pure parts, without servers: URL
 * parsing and policy, the SSRF address classes (private, link-local and
 * metadata ranges are checked here, never by sending to them), model_index.json
 * planning and manifests, output keys, S3 URLs, secret scrubbing, sizes and
 * backoff. The parts that need servers are tests/storage/ (test_storage.sh). */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "test_util.h"

#include "backoff.h"
#include "cache.h"
#include "credentials.h"
#include "model_index.h"
#include "model_source.h"
#include "output_key.h"
#include "s3.h"
#include "url_policy.h"

static void test_url_parse(void **state) {
    (void)state;
    pf_url u;
    pf_error err = {0};
    char out[PF_URL_MAX];
    assert_int_equal(pf_url_parse(&u, "HTTPS://Example.COM/a/b.safetensors?x=1", &err), 0);
    assert_string_equal(u.scheme, "https");
    assert_string_equal(u.host, "example.com");
    assert_int_equal(u.port, 443);
    assert_string_equal(u.path, "/a/b.safetensors?x=1");
    assert_int_equal(pf_url_format(out, sizeof out, &u, &err), 0);
    assert_string_equal(out, "https://example.com/a/b.safetensors?x=1");
    pf_url_for_log(out, sizeof out, &u);
    assert_string_equal(out, "https://example.com/a/b.safetensors?...");
    assert_int_equal(pf_url_parse(&u, "http://[::1]:8080", &err), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 8080);
    assert_string_equal(u.path, "/");
    assert_int_equal(pf_url_format(out, sizeof out, &u, &err), 0);
    assert_string_equal(out, "http://[::1]:8080/");
    assert_int_equal(pf_url_parse(&u, "file:///etc/passwd", &err), 0);
    assert_string_equal(u.scheme, "file");
    assert_string_equal(u.host, "");

    static const char *const bad[] = {
        "",
        "example.com/x",
        "http://user:pw@example.com/",
        "http://example.com:0/",
        "http://example.com:65536/",
        "http://example.com:80a/",
        "http://[::1%eth0]/",
        "http://[::1/",
        "http://[zz::1]/",
        "http://exa mple.com/",
        "http://example.com/a b",
        "http://example.com/%zz",
        "http://example.com/%4",
        "http://example.com/a#frag",
        "http://-bad.com/",
        "http://a..b/",
        "http:///nohost",
        "http://example.com/\x7f",
        "http://example.com/\xc3\xa9",
        "http://example.com/<script>",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err.msg[0] = '\0';
        if (pf_url_parse(&u, bad[i], &err) != -1) fail_msg("accepted: %s", bad[i]);
        assert_true(err.msg[0] != '\0');
        assert_null(strstr(err.msg, "pw@")); /* never echo a password */
    }
    char longurl[PF_URL_MAX + 10];
    memset(longurl, 'a', sizeof longurl - 1);
    memcpy(longurl, "http://x/", 9);
    longurl[sizeof longurl - 1] = '\0';
    assert_int_equal(pf_url_parse(&u, longurl, &err), -1);
}

static void test_url_policy(void **state) {
    (void)state;
    pf_url u;
    pf_error err = {0};
    pf_url_policy strict = {0, 0, NULL}, dev = {1, 1, NULL}, listed = {0, 0, "huggingface.co, .hf.co"};
    assert_int_equal(pf_url_parse(&u, "http://example.com/x", &err), 0);
    assert_int_equal(pf_url_check(&u, &strict, &err), -1);
    assert_non_null(strstr(err.msg, "plain http"));
    assert_int_equal(pf_url_check(&u, &dev, &err), 0);
    assert_int_equal(pf_url_parse(&u, "file:///etc/passwd", &err), 0);
    assert_int_equal(pf_url_check(&u, &dev, &err), -1);
    assert_non_null(strstr(err.msg, "scheme 'file://'"));
    assert_int_equal(pf_url_parse(&u, "gopher://x/", &err), 0);
    assert_int_equal(pf_url_check(&u, &dev, &err), -1);
    static const char *const ok[] = {"https://huggingface.co/a", "https://HuggingFace.co/a", "https://cdn.hf.co/x",
                                     "https://hf.co/x"};
    static const char *const no[] = {"https://huggingface.co.evil.com/a", "https://evilhuggingface.co/a",
                                     "https://xhf.co/a", "https://example.com/"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(pf_url_parse(&u, ok[i], &err), 0);
        if (pf_url_check(&u, &listed, &err)) fail_msg("refused %s: %s", ok[i], err.msg);
        assert_int_equal(pf_url_parse(&u, no[i], &err), 0);
        if (!pf_url_check(&u, &listed, &err)) fail_msg("allowed %s", no[i]);
    }
    pf_url a, b;
    assert_int_equal(pf_url_parse(&a, "https://h.com/x", &err), 0);
    assert_int_equal(pf_url_parse(&b, "https://h.com:443/y", &err), 0);
    assert_true(pf_url_same_origin(&a, &b));
    assert_int_equal(pf_url_parse(&b, "http://h.com/x", &err), 0);
    assert_false(pf_url_same_origin(&a, &b));
}

static const char *class_of(const char *text) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(text, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        PF_CHECK(inet_pton(AF_INET6, text, &s6->sin6_addr) == 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        PF_CHECK(inet_pton(AF_INET, text, &s4->sin_addr) == 1);
    }
    return pf_url_addr_class((struct sockaddr *)&ss);
}

static void test_ssrf_address_classes(void **state) {
    (void)state;
    static const char *const internal[] = {
        "127.0.0.1", "127.255.255.254", "0.0.0.0", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255",
        "192.168.1.1", "169.254.169.254", "169.254.0.1", "100.64.0.1", "100.100.100.200", "192.0.0.192",
        "192.0.2.1", "198.18.0.1", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
        "::", "::1", "::ffff:127.0.0.1", "::ffff:10.1.2.3", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe",
        "64:ff9b::7f00:1", "2002:7f00:1::", "2002:a9fe:a9fe::1", "fc00::1", "fd00:ec2::254", "fe80::1",
        "fec0::1", "ff02::1", "2001:db8::1", "::127.0.0.1", "100::1", "2001::1",
    };
    for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++)
        if (!class_of(internal[i])) fail_msg("%s taken for a public address", internal[i]);
    static const char *const public_[] = {"8.8.8.8", "1.1.1.1", "172.32.0.1", "172.15.255.255", "100.128.0.1",
                                          "169.253.0.1", "192.169.0.1", "11.0.0.1", "2606:4700::1111",
                                          "2a00:1450::1", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::"};
    for (size_t i = 0; i < sizeof public_ / sizeof public_[0]; i++)
        if (class_of(public_[i])) fail_msg("%s refused as %s", public_[i], class_of(public_[i]));
    assert_string_equal(class_of("169.254.169.254"), "cloud metadata");
    assert_string_equal(class_of("::ffff:127.0.0.1"), "loopback");

    struct sockaddr_in s4 = {.sin_family = AF_INET};
    inet_pton(AF_INET, "169.254.169.254", &s4.sin_addr);
    char why[200];
    pf_url_policy strict = {0, 0, NULL}, dev = {1, 1, NULL};
    assert_int_equal(pf_url_addr_allowed((struct sockaddr *)&s4, &strict, why, sizeof why), 0);
    assert_string_equal(why, "169.254.169.254 is not a public address (cloud metadata)");
    assert_int_equal(pf_url_addr_allowed((struct sockaddr *)&s4, &dev, why, sizeof why), 1);
    struct sockaddr su = {.sa_family = AF_UNIX};
    assert_int_equal(pf_url_addr_allowed(&su, &dev, why, sizeof why), 0);
}

static void test_model_source(void **state) {
    (void)state;
    pf_model_source s;
    pf_error err = {0};
    char url[PF_URL_MAX];
    assert_int_equal(pf_model_source_init(&s, PF_SOURCE_AUTO, "https://h.co/org/m/resolve/main/", NULL, 1, &err), 0);
    assert_int_equal(s.kind, PF_SOURCE_DIFFUSERS);
    assert_string_equal(s.url, "https://h.co/org/m/resolve/main");
    assert_int_equal(pf_model_source_file_url(url, sizeof url, &s, "unet/config.json", &err), 0);
    assert_string_equal(url, "https://h.co/org/m/resolve/main/unet/config.json");
    assert_int_equal(pf_model_source_init(&s, PF_SOURCE_AUTO, "https://h.co/x/lora.safetensors", NULL, 0, &err), 0);
    assert_int_equal(s.kind, PF_SOURCE_FILE);
    assert_int_equal(pf_model_source_init(&s, PF_SOURCE_AUTO, "https://h.co/dl?id=3", NULL, 0, &err), 0);
    assert_int_equal(s.kind, PF_SOURCE_FILE);
    assert_int_equal(pf_model_source_init(&s, PF_SOURCE_DIFFUSERS, "https://h.co/m?x=1", NULL, 0, &err), -1);
    assert_int_equal(pf_model_source_init(&s, PF_SOURCE_FILE, "https://h.co/a.bin", "ABC", 0, &err), -1);
    assert_int_equal(
        pf_model_source_init(&s, PF_SOURCE_DIFFUSERS, "https://h.co/m",
                             "0000000000000000000000000000000000000000000000000000000000000000", 0, &err),
        -1);
}

static int plan(const char *json, int fp16, pf_model_file *files, int *n, pf_error *err) {
    return pf_model_index_plan(files, n, PF_MODEL_MAX_FILES, json, strlen(json), fp16, err);
}

static void test_model_index_plan(void **state) {
    (void)state;
    pf_model_file f[PF_MODEL_MAX_FILES];
    int n;
    pf_error err = {0};
    const char *sd = "{\"_class_name\": \"StableDiffusionPipeline\", \"feature_extractor\": [null, null],"
                     " \"requires_safety_checker\": false, \"safety_checker\": [\"stable_diffusion\","
                     " \"StableDiffusionSafetyChecker\"], \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],"
                     " \"text_encoder\": [\"transformers\", \"CLIPTextModel\"], \"tokenizer\": [\"transformers\","
                     " \"CLIPTokenizer\"], \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],"
                     " \"vae\": [\"diffusers\", \"AutoencoderKL\"]}";
    assert_int_equal(plan(sd, 1, f, &n, &err), 0);
    assert_int_equal(n, 1 + 1 + 2 + 4 + 2 + 2);
    assert_string_equal(f[0].path, "model_index.json");
    assert_string_equal(f[1].path, "scheduler/scheduler_config.json");
    assert_string_equal(f[2].path, "text_encoder/config.json");
    assert_string_equal(f[3].path, "text_encoder/model.fp16.safetensors");
    assert_string_equal(f[3].fallback, "text_encoder/model.safetensors");
    assert_string_equal(f[4].path, "tokenizer/vocab.json");
    assert_int_equal(f[6].optional, 1); /* tokenizer_config.json */
    assert_string_equal(f[9].path, "unet/diffusion_pytorch_model.fp16.safetensors");
    assert_int_equal(plan(sd, 0, f, &n, &err), 0);
    assert_string_equal(f[9].path, "unet/diffusion_pytorch_model.safetensors");
    assert_string_equal(f[9].fallback, "unet/diffusion_pytorch_model.fp16.safetensors");
    for (int i = 0; i < n; i++) assert_true(pf_relpath_valid(f[i].path));

    static const char *const hostile[] = {
        "",
        "[]",
        "{\"unet\": [\"diffusers\", \"UNet2DConditionModel\"], \"unet\": [\"diffusers\", \"AutoencoderKL\"]}",
        "{\"../x\": [\"diffusers\", \"AutoencoderKL\"]}",
        "{\"a/b\": [\"diffusers\", \"AutoencoderKL\"]}",
        "{\".hidden\": [\"diffusers\", \"AutoencoderKL\"]}",
        "{\"..\": [\"diffusers\", \"AutoencoderKL\"]}",
        "{\"unet\": [\"diffusers\", \"Evil\"]}",
        "{\"unet\": [\"diffusers\", \"../../x\"]}",
        "{\"unet\": [\"diffusers\"]}",
        "{\"unet\": [1, 2]}",
        "{\"unet\": [\"diffusers\", \"UNet2DConditionModel\", 3]}",
        "{\"_class_name\": \"X\"}",
        "{\"unet\": [\"diff\\u0000users\", \"UNet2DConditionModel\"]}",
    };
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        err.msg[0] = '\0';
        if (plan(hostile[i], 0, f, &n, &err) != -1) fail_msg("accepted model_index: %s", hostile[i]);
        assert_true(err.msg[0] && !strchr(err.msg, '\n'));
    }
    /* too many components for the file cap */
    char many[8192] = "{";
    for (int i = 0; i < 40; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%s\"u%d\": [\"diffusers\", \"AutoencoderKL\"]",
                 i ? ", " : "", i);
    strcat(many, "}");
    assert_int_equal(plan(many, 0, f, &n, &err), -1);
    assert_non_null(strstr(err.msg, "more than 64 files"));
}

/* Sharded weights: their index names, the shards an index brings, hostile indexes refused. */
static void test_shard_plan(void **state) {
    (void)state;
    char name[PF_RELPATH_MAX];
    pf_error err = {0};
    assert_int_equal(pf_model_shard_index_name(name, sizeof name, "unet/diffusion_pytorch_model.safetensors", &err), 0);
    assert_string_equal(name, "unet/diffusion_pytorch_model.safetensors.index.json");
    assert_int_equal(pf_model_shard_index_name(name, sizeof name, "text_encoder/model.fp16.safetensors", &err), 0);
    assert_string_equal(name, "text_encoder/model.safetensors.index.fp16.json"); /* diffusers' variant naming */
    assert_int_equal(pf_model_shard_index_name(name, sizeof name, "unet/config.json", &err), -1);
    assert_true(pf_model_is_shard_index("vae/diffusion_pytorch_model.safetensors.index.fp16.json"));
    assert_false(pf_model_is_shard_index("vae/diffusion_pytorch_model.safetensors"));
    /* every weights entry of a plan may turn out sharded */
    pf_model_file f[PF_MODEL_MAX_FILES];
    int n = 0;
    const char *sd = "{\"unet\": [\"diffusers\", \"UNet2DConditionModel\"], \"tokenizer\": [\"transformers\", "
                     "\"CLIPTokenizer\"], \"scheduler\": [\"diffusers\", \"PNDMScheduler\"]}";
    assert_int_equal(pf_model_index_plan(f, &n, PF_MODEL_MAX_FILES, sd, strlen(sd), 0, &err), 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(f[i].weights, !strcmp(f[i].path, "unet/diffusion_pytorch_model.safetensors"));
    /* the configs alone: no weights at all */
    assert_int_equal(pf_model_index_plan_configs(f, &n, PF_MODEL_MAX_FILES, sd, strlen(sd), &err), 0);
    assert_int_equal(n, 1 + 1 + 4 + 1);
    for (int i = 0; i < n; i++) assert_null(strstr(f[i].path, ".safetensors"));
    /* an image encoder folder (IP-Adapter): config, weights of either variant, the processor's config */
    assert_int_equal(pf_model_image_encoder_plan(f, &n, PF_MODEL_MAX_FILES, 1, &err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(f[0].path, "config.json");
    assert_string_equal(f[1].path, "model.fp16.safetensors");
    assert_string_equal(f[1].fallback, "model.safetensors");
    assert_true(f[1].weights && !f[0].weights && !f[2].weights);
    assert_string_equal(f[2].path, "preprocessor_config.json");
    assert_int_equal(pf_model_image_encoder_plan(f, &n, 2, 0, &err), -1); /* no room: an error, not a short plan */
    /* the shards of an index: each once, beside it, after what was planned */
    const char *index = "{\"metadata\": {\"total_size\": 10}, \"weight_map\": {"
                        "\"a.weight\": \"m-00001-of-00002.safetensors\", "
                        "\"b.weight\": \"m-00002-of-00002.safetensors\", "
                        "\"c.weight\": \"m-00001-of-00002.safetensors\"}}";
    n = 1;
    snprintf(f[0].path, sizeof f[0].path, "unet/m.safetensors.index.json");
    assert_int_equal(pf_model_shard_plan(f, &n, PF_MODEL_MAX_FILES, f[0].path, index, strlen(index), &err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(f[1].path, "unet/m-00001-of-00002.safetensors");
    assert_string_equal(f[2].path, "unet/m-00002-of-00002.safetensors");
    assert_true(!f[1].optional && !f[1].weights && !f[1].fallback[0]);
    n = 0; /* a component served on its own: the shards at its root */
    assert_int_equal(pf_model_shard_plan(f, &n, PF_MODEL_MAX_FILES, "x.safetensors.index.json", index, strlen(index),
                                         &err), 0);
    assert_string_equal(f[0].path, "m-00001-of-00002.safetensors");
    static const char *const hostile[] = {
        "",
        "[]",
        "{}",
        "{\"weight_map\": {}}",
        "{\"weight_map\": []}",
        "{\"weight_map\": {\"a\": \"../x.safetensors\"}}",
        "{\"weight_map\": {\"a\": \"sub/x.safetensors\"}}",
        "{\"weight_map\": {\"a\": \"..\"}}",
        "{\"weight_map\": {\"a\": \"x.bin\"}}",
        "{\"weight_map\": {\"a\": 7}}",
        "{\"weight_map\": {\"a\": \"x\\u0000.safetensors\"}}",
        "{\"weight_map\": {\"a\": \"\"}}",
        "{\"weight_map\": {\"a\": \"x.safetensors\"}, \"weight_map\": {}}",
    };
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        n = 1;
        err.msg[0] = '\0';
        if (pf_model_shard_plan(f, &n, PF_MODEL_MAX_FILES, "unet/m.safetensors.index.json", hostile[i],
                                strlen(hostile[i]), &err) != -1 || n != 1)
            fail_msg("accepted weights index: %s", hostile[i]);
        assert_true(err.msg[0] && !strchr(err.msg, '\n'));
    }
    /* more shards than a model may have files */
    char many[16384] = "{\"weight_map\": {";
    for (int i = 0; i < PF_MODEL_MAX_FILES + 1; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%s\"k%d\": \"s%d.safetensors\"", i ? ", " : "", i,
                 i);
    strcat(many, "}}");
    n = 0;
    assert_int_equal(pf_model_shard_plan(f, &n, PF_MODEL_MAX_FILES, "unet/m.safetensors.index.json", many, strlen(many),
                                         &err), -1);
    assert_int_equal(n, 0);
}

static void test_manifest(void **state) {
    (void)state;
    pf_manifest_file in[2] = {{"model_index.json", "", 12}, {"unet/config.json", "", 34}};
    memset(in[0].sha256, 'a', 64);
    memset(in[1].sha256, 'b', 64);
    char *json = pf_manifest_format(in, 2, "https://h.co/m");
    pf_manifest_file out[4];
    int n;
    pf_error err = {0};
    assert_int_equal(pf_manifest_parse(out, &n, 4, json, strlen(json), &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(out[1].path, "unet/config.json");
    assert_int_equal(out[1].size, 34);
    free(json);
    static const char *const bad[] = {
        "{\"version\": 2, \"files\": []}",
        "{\"version\": 1, \"files\": [{\"path\": \"../x\", \"sha256\": \"" /* traversal */
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \"size\": 1}]}",
        "{\"version\": 1, \"files\": [{\"path\": \"a\", \"sha256\": \"../etc\", \"size\": 1}]}",
        "{\"version\": 1, \"files\": [{\"path\": \"a\", \"sha256\": "
        "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \"size\": -1}]}",
        "{\"version\": 1, \"files\": [{\"path\": \"a/b/c\", \"sha256\": "
        "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \"size\": 1}]}",
        "{\"version\": 1, \"files\": [{\"path\": \"a\", \"sha256\": "
        "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \"size\": 1}, {\"path\": \"a\", "
        "\"sha256\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \"size\": 1}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (pf_manifest_parse(out, &n, 4, bad[i], strlen(bad[i]), &err) != -1) fail_msg("accepted: %s", bad[i]);
}

static void test_output_key(void **state) {
    (void)state;
    char out[256];
    pf_error err = {0};
    assert_int_equal(pf_output_key(out, sizeof out, "s3://b/{job_id}/{index}-{seed}.png", "job-7.a_b", 3,
                                   18446744073709551615ull, &err),
                     0);
    assert_string_equal(out, "s3://b/job-7.a_b/3-18446744073709551615.png");
    assert_int_equal(pf_output_key(out, sizeof out, "{job_id}", "../etc", 0, 0, &err), -1);
    assert_int_equal(pf_output_key(out, sizeof out, "{job_id}", ".hidden", 0, 0, &err), -1);
    assert_int_equal(pf_output_key(out, sizeof out, "{job_id}", "a/b", 0, 0, &err), -1);
    assert_int_equal(pf_output_key(out, sizeof out, "{job_id}", "", 0, 0, &err), -1);
    assert_int_equal(pf_output_key(out, sizeof out, "{jobid}", "a", 0, 0, &err), -1);
    assert_int_equal(pf_output_key(out, sizeof out, "a}", "a", 0, 0, &err), -1);
    assert_int_equal(pf_output_key(out, sizeof out, "{index", "a", 0, 0, &err), -1);
    assert_int_equal(pf_output_key(out, sizeof out, "{index}", "a", -1, 0, &err), -1);
    assert_int_equal(pf_output_key(out, 8, "{job_id}/{index}", "abcdefg", 1, 0, &err), -1);
}

static void test_s3_urls(void **state) {
    (void)state;
    pf_s3_config cfg;
    pf_s3_config_default(&cfg);
    char url[4096], bucket[64], key[1100];
    pf_error err = {0};
    assert_int_equal(pf_s3_object_url(url, sizeof url, &cfg, "outputs", "a b/c+d/é.png", NULL, &err), 0);
    assert_string_equal(url, "https://outputs.s3.us-east-1.amazonaws.com/a%20b/c%2Bd/%C3%A9.png");
    snprintf(cfg.endpoint, sizeof cfg.endpoint, "http://127.0.0.1:9000/");
    cfg.path_style = 1;
    assert_int_equal(pf_s3_object_url(url, sizeof url, &cfg, "outputs", "k", "partNumber=1&uploadId=x", &err), 0);
    assert_string_equal(url, "http://127.0.0.1:9000/outputs/k?partNumber=1&uploadId=x");
    snprintf(cfg.endpoint, sizeof cfg.endpoint, "https://acct.r2.cloudflarestorage.com");
    cfg.path_style = 0;
    assert_int_equal(pf_s3_object_url(url, sizeof url, &cfg, "b-1", "x", NULL, &err), 0);
    assert_string_equal(url, "https://b-1.acct.r2.cloudflarestorage.com/x");
    snprintf(cfg.endpoint, sizeof cfg.endpoint, "ftp://x");
    assert_int_equal(pf_s3_object_url(url, sizeof url, &cfg, "b-1", "x", NULL, &err), -1);
    assert_int_equal(pf_s3_parse_dest(bucket, sizeof bucket, key, sizeof key, "s3://my.bucket-1/a/b.png", &err), 0);
    assert_string_equal(bucket, "my.bucket-1");
    assert_string_equal(key, "a/b.png");
    static const char *const bad[] = {"s3://ab/x", "s3://Upper/x", "s3://bucket", "s3://bucket/", "s3://-b-/x",
                                      "s3://bucket/a\nb", "http://bucket/x", "s3://b_x/x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (!pf_s3_parse_dest(bucket, sizeof bucket, key, sizeof key, bad[i], &err)) fail_msg("accepted %s", bad[i]);
}

static void test_secret_scrub(void **state) {
    (void)state;
    pf_secret_register("abc"); /* too short to redact: ignored */
    pf_secret_register("s3cr3t-value-0123");
    pf_secret_register("tok");
    char line[64] = "key=s3cr3t-value-0123 and abc, s3cr3t-value-0123!";
    pf_secret_scrub(line, sizeof line);
    assert_string_equal(line, "key=[redacted] and abc, [redacted]!");
    /* a redaction that would overflow the buffer truncates instead */
    pf_secret_register("ab12");
    char tight[16] = "ab12ab12ab12";
    pf_secret_scrub(tight, sizeof tight);
    assert_null(strstr(tight, "ab12"));
    assert_true(strlen(tight) < sizeof tight);
    /* a message cut in the middle of a secret does not keep its first bytes */
    char cut[64] = "error: key s3cr3t-val";
    pf_secret_scrub(cut, sizeof cut);
    assert_string_equal(cut, "error: key [redacted]");
}

static void test_sizes_and_backoff(void **state) {
    (void)state;
    uint64_t v;
    pf_error err = {0};
    assert_int_equal(pf_parse_size("512M", &v, &err), 0);
    assert_int_equal(v, 512ull << 20);
    assert_int_equal(pf_parse_size("20GiB", &v, &err), 0);
    assert_int_equal(v, 20ull << 30);
    assert_int_equal(pf_parse_size("123", &v, &err), 0);
    assert_int_equal(v, 123);
    assert_int_equal(pf_parse_size("-1", &v, &err), -1);
    assert_int_equal(pf_parse_size("1X", &v, &err), -1);
    assert_int_equal(pf_parse_size("99999999999T", &v, &err), -1);
    assert_int_equal(pf_parse_size("", &v, &err), -1);
    for (int retry = 1; retry <= 12; retry++) {
        long ms = pf_backoff_ms(retry, 200, 5000);
        long cap = 200L << (retry - 1 < 5 ? retry - 1 : 5);
        assert_true(ms >= 100 && ms <= (cap < 5000 ? cap : 5000));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parse),         cmocka_unit_test(test_url_policy),
        cmocka_unit_test(test_ssrf_address_classes), cmocka_unit_test(test_model_source),
        cmocka_unit_test(test_model_index_plan),  cmocka_unit_test(test_shard_plan), cmocka_unit_test(test_manifest),
        cmocka_unit_test(test_output_key),        cmocka_unit_test(test_s3_urls),
        cmocka_unit_test(test_secret_scrub),      cmocka_unit_test(test_sizes_and_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
