#!/usr/bin/env nextflow
/*
 * subtomo-embed: CryoSiam-compatible subtomogram embeddings, clustering and visualization.
 *
 *   nextflow run . -params-file configs/subtomo_embeddings.yaml -profile apptainer,gpu,slurm -resume
 *
 * The params file is CryoSiam's YAML config, unchanged (docs/config.md, docs/usage.md).
 */

include { SUBTOMO_EMBED } from './workflows/subtomo_embed'

workflow {
    main:
    if (!params.data_folder || !params.instances_mask_folder || !params.prediction_folder || !params.trained_model) {
        error("Set data_folder, instances_mask_folder, prediction_folder and trained_model (e.g. -params-file my.yaml)")
    }
    SUBTOMO_EMBED()

    workflow.onComplete {
        log.info(workflow.success
            ? "subtomo-embed: done; results in ${params.prediction_folder}"
            : "subtomo-embed: failed; see ${params.prediction_folder}/pipeline_info and .nextflow.log")
    }
}
