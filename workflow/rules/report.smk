# Tables A1-A8 and Figures A1-A3 from the runs' metrics.json files and the study specs.
# A1 and A4 read the profile config alone, so they need neither data nor runs.


rule table:
    input:
        unpack(table_inputs),
    output:
        csv=report(
            f"{RESULTS}/tables/{{table}}.csv",
            caption="../report/table.rst",
            category="Tables",
            # The title too: the report's front page shows each table under it (workflow.rst).
            labels=lambda wildcards: {
                "table": wildcards.table,
                "title": load_spec(ABLATIONS, wildcards.table)["title"],
            },
        ),
        markdown=f"{RESULTS}/tables/{{table}}.md",
        latex=f"{RESULTS}/tables/{{table}}.tex",
    params:
        out=lambda wildcards, output: Path(output.csv).parent,
    log:
        f"{RUNS}/logs/table-{{table}}.log",
    conda:
        ENV
    shell:
        "svitt table {wildcards.table} --profile {input.profile} --paper-profile {input.paper}"
        " --out-dir {params.out}"
        " > {log} 2>&1"


rule claims:
    """The supplement's claims (ablations/claims.tsv) checked on the runs' per-query outcomes."""
    input:
        profile=PROFILE_DUMP,
        spec=f"{ABLATIONS}/claims.tsv",
        # Which claims this profile can check: the runs its tables and Figure A1 read.
        specs=[f"{ABLATIONS}/{name}.yaml" for name in (*RESULTS_TABLES, "figure_A1")],
        sparsity=config["sparsity_table"],
        outcomes=claims_outcomes,
    output:
        **CLAIMS,
    params:
        out=lambda wildcards, output: Path(output.markdown).parent,
    log:
        f"{RUNS}/logs/claims.log",
    conda:
        ENV
    shell:
        "svitt claims --profile {input.profile} --out-dir {params.out} > {log} 2>&1"


rule claims_report:
    """The claims report's copy for the HTML report."""
    input:
        CLAIMS["markdown"],
    output:
        report(f"{RUNS}/report/claims.md", category="Claims"),
    log:
        f"{RUNS}/logs/claims_report.log",
    conda:
        ENV
    shell:
        "cp {input} {output} 2> {log}"


rule figure_keep_rate:
    input:
        profile=PROFILE_DUMP,
        spec=f"{ABLATIONS}/figure_A1.yaml",
        metrics=figure_a1_metrics,
    output:
        report(
            f"{RESULTS}/figures/A1.png",
            caption="../report/figure_A1.rst",
            category="Figures",
            labels={"figure": "A1"},
        ),
    log:
        f"{RUNS}/logs/figure-A1.log",
    conda:
        ENV
    shell:
        "svitt figure keep-rate --profile {input.profile} --out {output} > {log} 2>&1"


rule figure_tokens:
    input:
        checkpoint=lambda wildcards: PROFILE.checkpoint(tokens_run(wildcards.figure)),
        data=lambda wildcards: data_checks(TOKENS_SPEC["figures"][wildcards.figure]["dataset"]),
    output:
        png=report(
            f"{RESULTS}/figures/{{figure}}.png",
            caption="../report/figure_tokens.rst",
            category="Figures",
            labels={"figure": "{figure}"},
        ),
        config=f"{RUNS}/figures/{{figure}}-config.yaml",
    wildcard_constraints:
        figure="|".join(TOKENS_SPEC["figures"]),
    params:
        config=lambda wildcards: yaml.safe_dump(PROFILE.resolve(tokens_run(wildcards.figure))),
        clips=lambda wildcards: " ".join(map(str, TOKENS_SPEC["figures"][wildcards.figure]["clips"])),
    log:
        f"{RUNS}/logs/figure-{{figure}}.log",
    threads: 1
    conda:
        ENV
    shell:
        WRITE_CONFIG + "svitt figure tokens --checkpoint {input.checkpoint} --config"
        " {output.config} --clips {params.clips} --out {output.png} > {log} 2>&1"
